"""Creates the fixture database: ``python -m djshop.seed PATH`` (with tests/serverapps and
tests/serverapps/djshop on ``sys.path``).

Runs the migrations into a fresh sqlite file at PATH, fills it with the fixed catalog of
``catalog_data`` (12 categories, 300 products, 900 reviews) and adds an admin user. Refuses to
touch an existing file.
"""
import os
import sys


def seed(db_path: str) -> None:
    if os.path.exists(db_path):
        raise SystemExit(f"djshop.seed: {db_path} exists; give a new path")
    os.environ["DJSHOP_DB"] = db_path
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djshop.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from django.contrib.auth.models import User

    from catalog.models import Category, Product, Review
    from catalog_data import catalog

    cats, products, reviews = catalog()
    Category.objects.bulk_create([Category(id=c.id, name=c.name, slug=c.slug) for c in cats])
    Product.objects.bulk_create([Product(id=p.id, category_id=p.category_id, name=p.name,
                                         description=p.description, price_cents=p.price_cents, stock=p.stock)
                                 for p in products])
    Review.objects.bulk_create([Review(id=r.id, product_id=r.product_id, author=r.author, stars=r.stars,
                                       text=r.text) for r in reviews])
    User.objects.create_superuser("admin", "admin@example.com", "admin-password-for-tests")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m djshop.seed PATH")
    seed(sys.argv[1])
