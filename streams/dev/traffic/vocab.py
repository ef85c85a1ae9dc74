"""Realistic vocabulary of sample traffic: pages, user agents, referrers, mail domains, products."""
from __future__ import annotations

from datetime import UTC, timedelta, timezone

SITE = "https://www.example-cloud.com"
PAGES = ["/", "/pricing", "/products/cloud-server", "/products/object-storage",
         "/products/managed-database", "/promotions/new-user", "/docs/getting-started"]
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Mobile Safari/537.36",
]
UA_WEIGHTS = [30, 14, 18, 14, 6, 8, 10]
IP_FIRST = [23, 31, 36, 45, 49, 62, 73, 81, 94, 101, 112, 139, 171, 183, 203, 213]
CHANNELS = {
    "blog": lambda h, r: f"https://{h}.blog.example.net/posts/{r.randrange(1000, 9999)}",
    "forum": lambda h, r: f"https://forum.example.org/t/{h}-cloud-deal/{r.randrange(10000, 99999)}",
    "social": lambda h, r: f"https://t.co/{h[:5]}{r.randrange(100000, 999999)}",
    "video": lambda h, r: f"https://www.youtube.com/watch?v={h[:6]}{r.randrange(10000, 99999)}",
    "community": lambda h, r: None,  # group chats send no referrer
}
MAIL = ["gmail.com", "outlook.com", "yahoo.com", "proton.me", "qq.com", "icloud.com"]
COMPANY_MAIL = ["acme-corp.io", "globex.com", "initech.dev", "umbrella.co", "hooli.xyz"]
# (product, sku, category, monthly list price or one-off price, subscription?, weight)
CATALOGUE = [
    ("cloud-server-basic", "CS-B1", "compute", "69.00", True, 30),
    ("cloud-server-pro", "CS-P4", "compute", "299.00", True, 12),
    ("object-storage-1tb", "OS-1T", "storage", "19.90", True, 18),
    ("managed-db-mysql", "DB-M2", "database", "129.00", True, 10),
    ("cdn-traffic-pack-1tb", "CDN-1T", "network", "49.00", False, 10),
    ("domain-registration", "DOM-1Y", "domain", "12.00", False, 12),
    ("ssl-certificate-dv", "SSL-DV", "security", "89.00", False, 5),
    ("waf-standard", "WAF-S", "security", "599.00", True, 2),
    ("email-workspace-5", "MAIL-5", "collaboration", "36.00", True, 6),
    ("enterprise-support", "SUP-E", "support", "2999.00", False, 1),
]
PRODUCT_WEIGHTS = [p[5] for p in CATALOGUE]
ISO_ZONES = [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5)),
             timezone(timedelta(hours=5, minutes=30))]
# relative activity per UTC hour (a broad day/night cycle over the main markets)
HOURLY = [0.5, 0.45, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.0, 0.95,
          0.9, 0.9, 0.95, 1.0, 1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5]

# fraud only: never used by honest traffic, so that honest orders trip no check
# (bots by their user agent; the pipeline matches markers such as "bot", "python-requests", "curl")
BOT_UAS = ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
           "python-requests/2.31.0", "curl/8.5.0",
           "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"]
#: category "marketplace" is ineligible by default (docs/rules.md)
MARKETPLACE = [
    ("marketplace-wordpress-image", "MKT-WP", "marketplace", "29.00", False, 0),
    ("marketplace-firewall-appliance", "MKT-FW", "marketplace", "450.00", False, 0),
]
#: a big prepaid deal; its price is drawn per order, well above the 50 000 review threshold
BIG_DEAL = ("dedicated-cloud-cluster", "DCC-3Y", "compute", "0", False, 0)
#: customers of these domains belong to a channel partner (never used by honest signups)
CHANNEL_DOMAINS = ["northwind-reseller.com", "contoso-partners.net", "fabrikam-channel.io"]
