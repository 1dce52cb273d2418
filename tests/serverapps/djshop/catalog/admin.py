from django.contrib import admin

from .models import Category, Product, Review


class ReviewInline(admin.TabularInline):
    model = Review
    extra = 0


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("name", "category", "price_cents", "stock")
    list_filter = ("category",)
    search_fields = ("name", "description")
    inlines = [ReviewInline]


admin.site.register(Category)
admin.site.register(Review)
