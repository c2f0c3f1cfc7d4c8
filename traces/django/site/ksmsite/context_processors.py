from django.core.cache import cache

from shop.models import Category


def site(request):
    """Navigation data for every page (the category menu, cached per worker)."""
    menu = cache.get("nav:categories")
    if menu is None:
        menu = list(Category.objects.values("name", "slug"))
        cache.set("nav:categories", menu, 300)
    return {"site_name": "KSM sample shop", "nav_categories": menu}
