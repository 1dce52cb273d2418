from django.core.paginator import Paginator
from django.db.models import Avg, Count
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from .models import Category, Product


def health(request):
    return HttpResponse("ok", content_type="text/plain")


def product_list(request):
    products = Product.objects.select_related("category").order_by("id")
    page = Paginator(products, 20).get_page(request.GET.get("page"))
    return render(request, "catalog/product_list.html", {"page": page})


def product_detail(request, pk):
    product = get_object_or_404(Product.objects.select_related("category"), pk=pk)
    reviews = product.reviews.all()
    stats = reviews.aggregate(avg=Avg("stars"), n=Count("id"))
    return render(request, "catalog/product_detail.html",
                  {"product": product, "reviews": reviews, "stats": stats})


def category(request, slug):
    cat = get_object_or_404(Category, slug=slug)
    products = cat.products.annotate(n_reviews=Count("reviews")).order_by("-n_reviews", "id")[:30]
    return render(request, "catalog/category.html", {"category": cat, "products": products})


def product_json(request, pk):
    p = get_object_or_404(Product.objects.select_related("category"), pk=pk)
    return JsonResponse({"id": p.pk, "name": p.name, "category": p.category.slug, "price": p.price,
                         "stock": p.stock, "reviews": [
                             {"author": r.author, "stars": r.stars} for r in p.reviews.all()[:5]]})
