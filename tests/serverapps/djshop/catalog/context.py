from .models import Category


def categories(request):
    """Every page's navigation: the categories (one query, evaluated in the template)."""
    return {"categories": Category.objects.all()}
