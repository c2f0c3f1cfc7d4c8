"""The home page: recent posts, popular tags, featured products (cached per worker)."""

from django.core.cache import cache
from django.db.models import Count
from django.shortcuts import render

from blog.models import Post, Tag
from shop.models import Product


def home(request):
    context = cache.get("home:context")
    if context is None:
        context = {
            "recent_posts": list(Post.objects.select_related("author").prefetch_related("tags")[:10]),
            "popular_tags": list(Tag.objects.annotate(n=Count("posts")).order_by("-n", "name")[:12]),
            "featured": list(
                Product.objects.filter(active=True)
                .select_related("category")
                .annotate(sold=Count("order_items"))
                .order_by("-sold", "name")[:8]
            ),
        }
        cache.set("home:context", context, 60)
    return render(request, "home.html", context)
