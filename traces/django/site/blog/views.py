"""Blog pages (HTML) and the blog JSON API."""

from django.core.cache import cache
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render

from .models import Author, Post, Tag

POSTS_PER_PAGE = 20


def _post_page(request, queryset):
    paginator = Paginator(queryset, POSTS_PER_PAGE)
    return paginator.get_page(request.GET.get("page"))


def post_list(request):
    posts = Post.objects.select_related("author").prefetch_related("tags")
    return render(request, "blog/post_list.html", {"page": _post_page(request, posts)})


def tag_detail(request, slug):
    tag = get_object_or_404(Tag, slug=slug)
    posts = tag.posts.select_related("author").prefetch_related("tags")
    return render(request, "blog/post_list.html", {"page": _post_page(request, posts), "tag": tag})


def related_posts(post, limit=5):
    """Posts sharing the most tags with ``post`` (memoised per worker in the LocMemCache)."""
    key = f"blog:related:{post.pk}"
    related = cache.get(key)
    if related is None:
        tag_ids = list(post.tags.values_list("pk", flat=True))
        related = list(
            Post.objects.filter(tags__in=tag_ids)
            .exclude(pk=post.pk)
            .annotate(shared=Count("tags", filter=Q(tags__in=tag_ids)))
            .order_by("-shared", "-published_at")
            .values("pk", "slug", "title", "shared")[:limit]
        )
        cache.set(key, related, 300)
    return related


def post_detail(request, pk, slug=None):
    post = get_object_or_404(Post.objects.select_related("author").prefetch_related("tags"), pk=pk)
    comments = post.comments.filter(approved=True)
    seen = request.session.get("posts_seen", 0)
    request.session["posts_seen"] = seen + 1
    return render(
        request,
        "blog/post_detail.html",
        {"post": post, "comments": comments, "related": related_posts(post), "posts_seen": seen + 1},
    )


def author_detail(request, slug):
    author = get_object_or_404(Author, slug=slug)
    posts = author.posts.annotate(n_comments=Count("comments")).prefetch_related("tags")[:30]
    stats = author.posts.aggregate(n_posts=Count("pk"), n_comments=Count("comments"))
    return render(request, "blog/author_detail.html", {"author": author, "posts": posts, "stats": stats})


def _post_json(post, *, body=False):
    data = {
        "id": post.pk,
        "title": post.title,
        "slug": post.slug,
        "author": post.author.name,
        "published_at": post.published_at.isoformat(),
        "tags": [t.slug for t in post.tags.all()],
        "url": post.get_absolute_url(),
    }
    if body:
        data["body"] = post.body
    return data


def api_posts(request):
    posts = Post.objects.select_related("author").prefetch_related("tags")
    tag = request.GET.get("tag")
    if tag:
        posts = posts.filter(tags__slug=tag)
    page = _post_page(request, posts)
    return JsonResponse(
        {
            "page": page.number,
            "pages": page.paginator.num_pages,
            "count": page.paginator.count,
            "results": [_post_json(p) for p in page],
        }
    )


def api_post(request, pk):
    post = get_object_or_404(Post.objects.select_related("author").prefetch_related("tags"), pk=pk)
    data = _post_json(post, body=True)
    data["comments"] = [
        {"author": c.author_name, "body": c.body, "created_at": c.created_at.isoformat()}
        for c in post.comments.filter(approved=True)
    ]
    data["related"] = related_posts(post)
    return JsonResponse(data)
