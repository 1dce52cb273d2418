"""Creates the fixture database: ``python -m flaskshop.seed PATH`` (with tests/serverapps and
tests/serverapps/flaskshop on ``sys.path``).

A fresh sqlite file at PATH with the fixed catalog of ``catalog_data`` (12 categories, 300
products, 900 reviews). Refuses to touch an existing file.
"""
import os
import sys


def seed(db_path: str) -> None:
    if os.path.exists(db_path):
        raise SystemExit(f"flaskshop.seed: {db_path} exists; give a new path")
    os.environ["FLASKSHOP_DB"] = db_path
    from catalog_data import catalog
    from flaskshop import create_app
    from flaskshop.models import Category, Product, Review, db

    cats, products, reviews = catalog()
    with create_app().app_context():
        db.create_all()
        db.session.add_all([Category(id=c.id, name=c.name, slug=c.slug) for c in cats])
        db.session.add_all([Product(id=p.id, category_id=p.category_id, name=p.name, description=p.description,
                                    price_cents=p.price_cents, stock=p.stock) for p in products])
        db.session.add_all([Review(id=r.id, product_id=r.product_id, author=r.author, stars=r.stars, text=r.text)
                            for r in reviews])
        db.session.commit()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m flaskshop.seed PATH")
    seed(sys.argv[1])
