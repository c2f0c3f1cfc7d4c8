from django.contrib import admin

from .models import Author, Comment, Post, Tag


class CommentInline(admin.TabularInline):
    model = Comment
    extra = 0
    fields = ["author_name", "created_at", "approved"]
    readonly_fields = ["created_at"]


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):
    list_display = ["name", "email", "joined_at"]
    search_fields = ["name", "email"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    search_fields = ["name"]


@admin.register(Post)
class PostAdmin(admin.ModelAdmin):
    list_display = ["title", "author", "published_at", "reading_minutes"]
    list_filter = ["tags", "published_at"]
    list_select_related = ["author"]
    search_fields = ["title", "summary"]
    date_hierarchy = "published_at"
    filter_horizontal = ["tags"]
    raw_id_fields = ["author"]
    inlines = [CommentInline]


@admin.register(Comment)
class CommentAdmin(admin.ModelAdmin):
    list_display = ["author_name", "post", "created_at", "approved"]
    list_filter = ["approved"]
    list_select_related = ["post"]
    raw_id_fields = ["post"]
    search_fields = ["author_name", "body"]
