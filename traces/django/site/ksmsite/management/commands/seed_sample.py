"""Fill an empty database with the deterministic sample data (``manage.py seed_sample``).

The same seed gives the same rows, ids, texts, prices and timestamps, and the same admin
password hash (its salt is derived from the seed), so two runs build identical content.
"""

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify

from blog.models import Author, Comment, Post, Tag
from shop.models import Category, Customer, Order, OrderItem, Product

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
SPAN_DAYS = 700

FIRST = (
    "Ada Alan Barbara Claude Dana Edsger Frances Grace Hedy Ivan John Karen Linus Margaret Niklaus "
    "Olga Peter Radia Sophie Tim Ursula Vint Whitfield Xiao Yukihiro Zoe Brian Dennis Ken Rob"
).split()
LAST = (
    "Lovelace Turing Liskov Shannon Scott Dijkstra Allen Hopper Lamarr Sutherland Backus Jones "
    "Torvalds Hamilton Wirth Taussky Naur Perlman Wilson Berners Franklin Cerf Diffie Ng Matsumoto "
    "Kernighan Ritchie Thompson Pike Knuth"
).split()
CITIES = (
    "Amsterdam Berlin Cairo Denver Edinburgh Florence Geneva Helsinki Istanbul Jakarta Kyoto Lisbon "
    "Madrid Nairobi Oslo Prague Quito Riga Santiago Tallinn Utrecht Valencia Warsaw Yokohama Zagreb"
).split()
WORDS = (
    "memory page kernel merge scan stable tree node process worker fork copy write share frame "
    "cache queue thread socket request response latency budget capacity cluster host fleet "
    "container service deploy rollout metric signal trace sample replay model policy knob "
    "threshold window interval batch sleep pressure reclaim swap huge table entry index hash "
    "content zero checksum random layout heap arena object reference count garbage collector "
    "freeze import module template view query database session cookie token cursor row column "
    "partition snapshot delta encode compress dictionary parquet arrow vector matrix sort group "
    "merge split filter join map reduce stream buffer chunk block sector disk network packet "
    "route proxy balance timeout retry backoff limit quota share budget plan forecast estimate "
    "measure compare report chart review audit verify prove test bench profile tune optimise "
    "simple careful quiet rapid steady gentle bright clever honest modest patient precise "
    "robust subtle vivid ancient modern northern southern early late small large tiny vast"
).split()
TAGS = (
    "python django linux kernel memory performance databases testing security networking "
    "devops containers scaling caching profiling debugging architecture design tutorials "
    "release-notes opinion history hardware storage observability tooling packaging "
    "concurrency algorithms education"
).split()
CATEGORY_NAMES = (
    "Books;Boards;Cables;Cameras;Chairs;Desks;Drives;Games;Headphones;Keyboards;Lamps;Laptops;"
    "Microphones;Monitors;Mice;Notebooks;Pens;Phones;Printers;Routers;Speakers;Stickers;Tablets;"
    "Tools;Watches"
).split(";")
ADJECTIVES = "Compact Deluxe Classic Rugged Silent Wireless Portable Heavy-duty Vintage Smart Ergonomic Solar".split()
MATERIALS = "Oak Steel Carbon Bamboo Aluminium Leather Glass Ceramic Copper Walnut".split()


def _sentence(rng, lo=6, hi=16):
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + "."


def _paragraph(rng, lo=3, hi=7):
    return " ".join(_sentence(rng) for _ in range(rng.randint(lo, hi)))


def _when(rng, start=EPOCH, days=SPAN_DAYS):
    return start + timedelta(seconds=rng.randrange(days * 86400))


class Command(BaseCommand):
    help = "Fill an empty database with the deterministic blog + shop sample data."

    def add_arguments(self, parser):
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--posts", type=int, default=2000)
        parser.add_argument("--comments", type=int, default=8000)
        parser.add_argument("--products", type=int, default=1500)
        parser.add_argument("--customers", type=int, default=800)
        parser.add_argument("--orders", type=int, default=3000)
        parser.add_argument("--admin-password", default="ksm-sample-admin")

    @transaction.atomic
    def handle(self, *args, seed, posts, comments, products, customers, orders, admin_password, **kw):
        if Post.objects.exists() or Product.objects.exists() or User.objects.exists():
            raise CommandError("the database already holds data; seed a freshly migrated database")
        rng = random.Random(seed)

        User.objects.create(
            username="admin",
            email="admin@example.invalid",
            is_staff=True,
            is_superuser=True,
            password=make_password(admin_password, salt=f"ksmsample{seed}"),
            date_joined=EPOCH,
        )

        authors = []
        for i in range(40):
            name = f"{FIRST[i % len(FIRST)]} {LAST[(i * 7) % len(LAST)]}"
            authors.append(
                Author(
                    pk=i + 1,
                    name=name,
                    slug=f"{slugify(name)}-{i + 1}",
                    email=f"author{i + 1}@example.invalid",
                    bio=_paragraph(rng, 2, 4),
                    joined_at=_when(rng, days=200),
                )
            )
        Author.objects.bulk_create(authors)
        tags = [Tag(pk=i + 1, name=t.replace("-", " "), slug=t) for i, t in enumerate(TAGS)]
        Tag.objects.bulk_create(tags)

        post_rows, post_tags = [], []
        Through = Post.tags.through
        for i in range(posts):
            title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).title()
            body = "\n\n".join(_paragraph(rng) for _ in range(rng.randint(3, 8)))
            post_rows.append(
                Post(
                    pk=i + 1,
                    author_id=rng.randint(1, len(authors)),
                    title=title,
                    slug=slugify(title)[:200],
                    summary=_sentence(rng, 12, 30)[:300],
                    body=body,
                    published_at=_when(rng, start=EPOCH + timedelta(days=30)),
                    reading_minutes=max(1, len(body.split()) // 200),
                )
            )
            for tag_id in rng.sample(range(1, len(tags) + 1), rng.randint(1, 4)):
                post_tags.append(Through(post_id=i + 1, tag_id=tag_id))
        Post.objects.bulk_create(post_rows, batch_size=500)
        Through.objects.bulk_create(post_tags, batch_size=1000)

        comment_rows = []
        for i in range(comments):
            post = post_rows[rng.randrange(len(post_rows))]
            comment_rows.append(
                Comment(
                    pk=i + 1,
                    post_id=post.pk,
                    author_name=f"{rng.choice(FIRST)} {rng.choice(LAST)[0]}.",
                    body=_paragraph(rng, 1, 3),
                    created_at=post.published_at + timedelta(minutes=rng.randrange(60 * 24 * 60)),
                    approved=rng.random() > 0.05,
                )
            )
        Comment.objects.bulk_create(comment_rows, batch_size=1000)

        categories = [
            Category(pk=i + 1, name=n, slug=slugify(n), description=_paragraph(rng, 1, 3))
            for i, n in enumerate(CATEGORY_NAMES)
        ]
        Category.objects.bulk_create(categories)
        product_rows = []
        for i in range(products):
            cat = categories[rng.randrange(len(categories))]
            name = f"{rng.choice(ADJECTIVES)} {rng.choice(MATERIALS)} {cat.name[:-1]} {i + 1}"
            product_rows.append(
                Product(
                    pk=i + 1,
                    category_id=cat.pk,
                    name=name,
                    slug=slugify(name),
                    sku=f"KSM-{i + 1:05d}",
                    description="\n\n".join(_paragraph(rng, 2, 5) for _ in range(rng.randint(1, 3))),
                    price=Decimal(rng.randrange(199, 99999)) / 100,
                    stock=rng.choice([0, 0, 1, 3, 5, 10, 25, 50, 100, 250]),
                    created_at=_when(rng),
                    active=rng.random() > 0.03,
                )
            )
        Product.objects.bulk_create(product_rows, batch_size=500)

        customer_rows = []
        for i in range(customers):
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            customer_rows.append(
                Customer(
                    pk=i + 1,
                    name=name,
                    email=f"customer{i + 1}@example.invalid",
                    city=rng.choice(CITIES),
                    joined_at=_when(rng, days=300),
                )
            )
        Customer.objects.bulk_create(customer_rows, batch_size=500)

        statuses = [s for s, _ in Order.Status.choices]
        weights = [5, 10, 20, 60, 5]
        order_rows, item_rows = [], []
        for i in range(orders):
            cust = customer_rows[rng.randrange(len(customer_rows))]
            order_rows.append(
                Order(
                    pk=i + 1,
                    customer_id=cust.pk,
                    status=rng.choices(statuses, weights)[0],
                    created_at=_when(rng, start=EPOCH + timedelta(days=60), days=SPAN_DAYS - 60),
                    shipping_city=cust.city if rng.random() < 0.9 else rng.choice(CITIES),
                )
            )
            for prod in rng.sample(product_rows, rng.randint(1, 5)):
                item_rows.append(
                    OrderItem(
                        order_id=i + 1,
                        product_id=prod.pk,
                        quantity=rng.choice([1, 1, 1, 2, 2, 3, 5]),
                        unit_price=prod.price,
                    )
                )
        Order.objects.bulk_create(order_rows, batch_size=500)
        OrderItem.objects.bulk_create(item_rows, batch_size=1000)

        self.stdout.write(
            f"seeded (seed {seed}): {len(authors)} authors, {len(tags)} tags, {len(post_rows)} posts, "
            f"{len(post_tags)} post-tag links, {len(comment_rows)} comments, {len(categories)} categories, "
            f"{len(product_rows)} products, {len(customer_rows)} customers, {len(order_rows)} orders, "
            f"{len(item_rows)} order items"
        )
