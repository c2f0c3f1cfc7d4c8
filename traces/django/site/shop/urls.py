from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.category_list, name="categories"),
    path("category/<slug:slug>/", views.category_detail, name="category"),
    path("product/<int:pk>/", views.product_detail, name="product_by_id"),
    path("product/<int:pk>/<slug:slug>/", views.product_detail, name="product"),
    path("search/", views.search, name="search"),
    path("cart/", views.cart, name="cart"),
]
