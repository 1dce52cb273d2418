from flask import Blueprint, abort, render_template, request
from sqlalchemy import func, select
from sqlalchemy.orm import joinedload

from .models import Category, Product, Review, db

catalog = Blueprint("catalog", __name__)


@catalog.app_context_processor
def navigation():
    return {"categories": db.session.scalars(select(Category).order_by(Category.name)).all()}


@catalog.get("/health")
def health():
    return "ok", 200, {"Content-Type": "text/plain"}


@catalog.get("/")
def product_list():
    page = db.paginate(select(Product).options(joinedload(Product.category)).order_by(Product.id),
                       page=request.args.get("page", 1, type=int), per_page=20, error_out=False)
    return render_template("product_list.html", page=page)


@catalog.get("/products/<int:pk>/")
def product_detail(pk: int):
    product = db.get_or_404(Product, pk)
    avg, n = db.session.execute(select(func.avg(Review.stars), func.count(Review.id))
                                .where(Review.product_id == pk)).one()
    return render_template("product_detail.html", product=product, avg=avg, n=n)


@catalog.get("/categories/<slug>/")
def category(slug: str):
    cat = db.session.scalar(select(Category).where(Category.slug == slug))
    if cat is None:
        abort(404)
    n_reviews = func.count(Review.id).label("n_reviews")
    rows = db.session.execute(select(Product, n_reviews).outerjoin(Review).where(Product.category_id == cat.id)
                              .group_by(Product.id).order_by(n_reviews.desc(), Product.id).limit(30)).all()
    return render_template("category.html", category=cat, rows=rows)
