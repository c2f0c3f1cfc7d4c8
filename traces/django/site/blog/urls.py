from django.urls import path

from . import views

app_name = "blog"

urlpatterns = [
    path("", views.post_list, name="list"),
    path("tag/<slug:slug>/", views.tag_detail, name="tag"),
    path("post/<int:pk>/", views.post_detail, name="post_by_id"),
    path("post/<int:pk>/<slug:slug>/", views.post_detail, name="post"),
    path("author/<slug:slug>/", views.author_detail, name="author"),
]
