"""URLs of the sample site: blog, shop, JSON API, admin."""

from django.contrib import admin
from django.urls import include, path

from blog import views as blog_views
from shop import views as shop_views

from . import views

api_patterns = [
    path("posts/", blog_views.api_posts, name="posts"),
    path("posts/<int:pk>/", blog_views.api_post, name="post"),
    path("products/", shop_views.api_products, name="products"),
    path("orders/<int:pk>/", shop_views.api_order, name="order"),
    path("stats/", shop_views.api_stats, name="stats"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("blog/", include("blog.urls")),
    path("shop/", include("shop.urls")),
    path("api/", include((api_patterns, "api"))),
    path("admin/", admin.site.urls),
]
