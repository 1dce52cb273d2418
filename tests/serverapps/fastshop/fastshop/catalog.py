"""The FastAPI fixture's data: the fixed catalog of ``catalog_data`` as pydantic models, held in
memory by the app (validated on construction)."""
from pydantic import BaseModel, Field

import catalog_data


class Category(BaseModel):
    id: int
    name: str
    slug: str


class Review(BaseModel):
    id: int
    product_id: int
    author: str
    stars: int = Field(ge=1, le=5)
    text: str


class Product(BaseModel):
    id: int
    category: Category
    name: str
    description: str
    price_cents: int = Field(ge=0)
    stock: int = Field(ge=0)
    reviews: list[Review] = []

    @property
    def price(self) -> str:
        return f"{self.price_cents // 100}.{self.price_cents % 100:02d}"


class ProductOut(BaseModel):
    id: int
    name: str
    category: str
    price: str
    stock: int
    reviews: list[dict[str, str | int]]


class Page(BaseModel):
    page: int
    pages: int
    items: list[ProductOut]


def build() -> tuple[list[Category], dict[int, Product]]:
    cats_raw, products_raw, reviews_raw = catalog_data.catalog()
    cats = [Category(**c._asdict()) for c in cats_raw]
    by_id = {c.id: c for c in cats}
    products = {p.id: Product(id=p.id, category=by_id[p.category_id], name=p.name, description=p.description,
                              price_cents=p.price_cents, stock=p.stock) for p in products_raw}
    for r in reviews_raw:
        products[r.product_id].reviews.append(Review(**r._asdict()))
    for p in products.values():
        p.reviews.sort(key=lambda r: (-r.stars, r.id))
    return cats, products
