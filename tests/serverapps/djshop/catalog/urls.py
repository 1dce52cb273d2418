from django.urls import path

from . import views

urlpatterns = [
    path("", views.product_list, name="product-list"),
    path("health", views.health, name="health"),
    path("products/<int:pk>/", views.product_detail, name="product-detail"),
    path("categories/<slug:slug>/", views.category, name="category"),
    path("api/products/<int:pk>", views.product_json, name="product-json"),
]
