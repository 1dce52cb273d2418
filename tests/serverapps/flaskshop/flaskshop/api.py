from flask import Blueprint, jsonify

from .models import Product, db

api = Blueprint("api", __name__)


@api.get("/products/<int:pk>")
def product_json(pk: int):
    p = db.get_or_404(Product, pk)
    return jsonify(id=p.id, name=p.name, category=p.category.slug, price=p.price, stock=p.stock,
                   reviews=[{"author": r.author, "stars": r.stars} for r in p.reviews[:5]])
