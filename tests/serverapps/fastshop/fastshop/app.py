"""The FastAPI fixture app (``fastshop.app:app``): JSON routes with pydantic response models and
two Jinja2-rendered pages, over the in-memory catalog of :mod:`fastshop.catalog`."""
import os

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.templating import Jinja2Templates

from .catalog import Page, Product, ProductOut, build

CATEGORIES, PRODUCTS = build()
PER_PAGE = 20

app = FastAPI(title="fastshop")
templates = Jinja2Templates(directory=os.path.join(os.path.dirname(__file__), "templates"))


def _out(p: Product) -> ProductOut:
    return ProductOut(id=p.id, name=p.name, category=p.category.slug, price=p.price, stock=p.stock,
                      reviews=[{"author": r.author, "stars": r.stars} for r in p.reviews[:5]])


def _product(pk: int) -> Product:
    try:
        return PRODUCTS[pk]
    except KeyError:
        raise HTTPException(status_code=404, detail="no such product") from None


@app.get("/health", response_class=PlainTextResponse)
def health() -> str:
    return "ok"


@app.get("/api/products", response_model=Page)
def product_page(page: int = 1) -> Page:
    pages = -(-len(PRODUCTS) // PER_PAGE)
    page = min(max(page, 1), pages)
    ids = sorted(PRODUCTS)[(page - 1) * PER_PAGE: page * PER_PAGE]
    return Page(page=page, pages=pages, items=[_out(PRODUCTS[i]) for i in ids])


@app.get("/api/products/{pk}", response_model=ProductOut)
async def product_json(pk: int) -> ProductOut:
    return _out(_product(pk))


@app.get("/products/{pk}/", response_class=HTMLResponse)
async def product_detail(request: Request, pk: int):
    p = _product(pk)
    avg = sum(r.stars for r in p.reviews) / len(p.reviews) if p.reviews else 0.0
    return templates.TemplateResponse(request, "product_detail.html",
                                      {"product": p, "avg": avg, "categories": CATEGORIES})


@app.get("/categories/{slug}/", response_class=HTMLResponse)
def category(request: Request, slug: str):
    cat = next((c for c in CATEGORIES if c.slug == slug), None)
    if cat is None:
        raise HTTPException(status_code=404, detail="no such category")
    rows = sorted((p for p in PRODUCTS.values() if p.category.id == cat.id), key=lambda p: (-len(p.reviews), p.id))
    return templates.TemplateResponse(request, "category.html",
                                      {"category": cat, "products": rows[:30], "categories": CATEGORIES})
