from __future__ import annotations

import pytest

from cms_sync.allowlist import AllowedHost, parse_allowed_host, project_assets, refusal_reason

ALLOWED = (AllowedHost("cdn.sanity.io"), AllowedHost("127.0.0.1", 8801))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://cdn.sanity.io/images/p/d/a-1x1.jpg", None),
        ("https://CDN.Sanity.io./images/a.jpg", None),
        ("https://cdn.sanity.io:443/a.jpg", None),
        ("http://127.0.0.1:8801/images/a.jpg", None),
        ("https://cdn.sanity.io:8443/a.jpg", "not in CMS_SYNC_ALLOWED_ASSET_HOSTS"),
        ("http://cdn.sanity.io/a.jpg", "plain http"),
        ("https://cdn.sanity.io.evil.com/a.jpg", "not in CMS_SYNC_ALLOWED_ASSET_HOSTS"),
        ("https://cdn.sanity.io@evil.com/a.jpg", "credentials"),
        ("https://user:pw@cdn.sanity.io/a.jpg", "credentials"),
        ("http://127.0.0.1:8802/a.jpg", "not in CMS_SYNC_ALLOWED_ASSET_HOSTS"),
        ("http://127.0.0.1/a.jpg", "not in CMS_SYNC_ALLOWED_ASSET_HOSTS"),
        ("file:///etc/passwd", "not an http(s) URL"),
        ("ftp://cdn.sanity.io/a.jpg", "not an http(s) URL"),
        ("https:///a.jpg", "not an http(s) URL"),
        ("https://cdn.sanity.io:99999/a.jpg", "not a valid URL"),
    ],
)
def test_refusal_reason(url: str, reason: str | None) -> None:
    got = refusal_reason(url, ALLOWED)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("cdn.sanity.io", AllowedHost("cdn.sanity.io")),
        (" CDN.sanity.IO ", AllowedHost("cdn.sanity.io")),
        ("127.0.0.1:8801", AllowedHost("127.0.0.1", 8801)),
        ("[::1]:9000", AllowedHost("::1", 9000)),
        ("cdn.sanity.io/images", AllowedHost("cdn.sanity.io", path_prefix="/images/")),
        (
            "CDN.sanity.io/images/Proj/prod/",
            AllowedHost("cdn.sanity.io", path_prefix="/images/Proj/prod/"),
        ),
        ("127.0.0.1:8801/", AllowedHost("127.0.0.1", 8801)),
    ],
)
def test_parse_allowed_host(entry: str, parsed: AllowedHost) -> None:
    assert parse_allowed_host(entry) == parsed


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "https://cdn.sanity.io",
        "a@b",
        "h:port",
        "/images/p/d",
        "cdn.sanity.io/images/../files",
        "cdn.sanity.io/images%2f..",
        "cdn.sanity.io\\images",
    ],
)
def test_bad_allowed_host_entries(entry: str) -> None:
    with pytest.raises(ValueError, match="host\\[:port\\]"):
        parse_allowed_host(entry)


PROJECT = project_assets("cmsdemo", "production")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://cdn.sanity.io/images/cmsdemo/production/a-1x1.jpg", None),
        ("https://cdn.sanity.io/files/cmsdemo/production/b.pdf", None),
        ("https://cdn.sanity.io/images/otherproj/production/a-1x1.jpg", "not under an allowed"),
        ("https://cdn.sanity.io/images/cmsdemo/staging/a-1x1.jpg", "not under an allowed"),
        ("https://cdn.sanity.io/images/cmsdemo/productionx/a.jpg", "not under an allowed"),
        ("https://cdn.sanity.io/images/cmsdemo/production", "not under an allowed"),
        ("https://cdn.sanity.io/", "not under an allowed"),
        ("https://cdn.sanity.io/images/cmsdemo/production/../../x/y/a.jpg", "'..' segments"),
        ("https://cdn.sanity.io/images/cmsdemo/production/%2e%2e/%2E%2E/x/a.jpg", "'..' seg"),
        ("https://cdn.sanity.io/images/cmsdemo/production/..%2f..%2fx.jpg", "encoded slash"),
        ("https://cdn.sanity.io/images/cmsdemo/production/a\\..\\b.jpg", "backslash"),
        ("https://evil.example/images/cmsdemo/production/a.jpg", "not in CMS_SYNC_ALLOWED"),
    ],
)
def test_by_default_only_this_projects_dataset_is_allowed(url: str, reason: str | None) -> None:
    got = refusal_reason(url, PROJECT)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def test_an_entry_without_a_path_keeps_allowing_the_whole_host() -> None:
    host_wide = (parse_allowed_host("cdn.sanity.io"),)
    assert refusal_reason("https://cdn.sanity.io/images/otherproj/prod/a.jpg", host_wide) is None
