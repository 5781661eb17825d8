"""HTTP for the upstream sources: JSON with a size limit, GitHub's paginated lists and its
rate-limit answers, one clear error (``SourceError``) for anything that stops a source.

GitHub REST API facts used here (docs.github.com):
- "Using pagination in the REST API": a paginated answer carries a ``link`` header with
  ``rel="next"`` (and ``last``) URLs; ``per_page`` is at most 100; no ``link`` header means one page.
- "Rate limits for the REST API" / "Troubleshooting the REST API": 60 requests an hour without a
  token, 5,000 with one (1,000 per repository for GITHUB_TOKEN in Actions). Over the primary limit
  GitHub answers 403 or 429 with ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset`` (UTC epoch
  seconds); over a secondary limit, 403 or 429 with a message and perhaps ``retry-after``. Callers
  must not retry before then, so this client does not retry: it reports when to.
- Requests send ``Accept: application/vnd.github+json`` and ``X-GitHub-Api-Version: 2022-11-28``,
  and ``Authorization: Bearer <token>`` when GITHUB_TOKEN is set.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterator

import requests

from builder.errors import BuilderError

MAX_JSON_BYTES = 16 * 1024 * 1024  # PyPI's largest project pages are a few MiB
MAX_PAGES = 50  # 5,000 tags at 100 a page: far beyond any repository here; a loop guard
GITHUB_API = "https://api.github.com"
GITHUB_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


class SourceError(BuilderError):
    """An upstream source could not be asked (unreachable, rate-limited, refused, odd answer).
    Exit 4, as `builder lock` uses for a registry that could not be asked."""

    exit_code = 4


class Web:
    """One requests session for every source, with a timeout and the user's GitHub token."""

    per_page = 100  # GitHub's maximum page size

    def __init__(self, timeout: float = 30, github_token: str | None = None, session: requests.Session | None = None):
        self.timeout = timeout
        self.github_token = github_token
        self.session = session or requests.Session()

    def get(self, url: str, what: str, headers: dict | None = None, stream: bool = False) -> requests.Response:
        try:
            return self.session.get(url, headers=headers or {}, timeout=self.timeout, stream=stream)
        except requests.RequestException as exc:
            raise SourceError(f"{what}: cannot reach {_host(url)}: {type(exc).__name__}") from None

    def head(self, url: str, what: str) -> requests.Response:
        try:
            return self.session.head(url, timeout=self.timeout, allow_redirects=True)
        except requests.RequestException as exc:
            raise SourceError(f"{what}: cannot reach {_host(url)}: {type(exc).__name__}") from None

    def json(self, url: str, what: str, headers: dict | None = None) -> tuple[Any, requests.Response]:
        answer = self.get(url, what, headers, stream=True)
        if answer.status_code != 200:
            answer.close()
            raise SourceError(f"{what}: {_host(url)} answered HTTP {answer.status_code} for {url}")
        return _read_json(answer, what), answer

    # -- GitHub ------------------------------------------------------------------------------------

    def github_list(self, url: str, what: str) -> Iterator[dict]:
        """Every item of a paginated GitHub list, following ``link: <...>; rel="next"``."""
        headers = dict(GITHUB_HEADERS)
        if self.github_token:
            headers["Authorization"] = f"Bearer {self.github_token}"
        sep = "&" if "?" in url else "?"
        next_url: str | None = f"{url}{sep}per_page={self.per_page}"
        for _ in range(MAX_PAGES):
            if next_url is None:
                return
            answer = self.get(next_url, what, headers, stream=True)
            if answer.status_code in (403, 429):
                answer.close()
                raise SourceError(f"{what}: {rate_limit_message(answer, bool(self.github_token))}")
            if answer.status_code != 200:
                answer.close()
                raise SourceError(f"{what}: GitHub answered HTTP {answer.status_code} for {next_url}")
            page = _read_json(answer, what)
            if not isinstance(page, list):
                raise SourceError(f"{what}: GitHub sent something that is not a list for {next_url}")
            yield from (item for item in page if isinstance(item, dict))
            next_url = (answer.links.get("next") or {}).get("url")
        raise SourceError(f"{what}: more than {MAX_PAGES} pages from GitHub; refusing to go on")


def rate_limit_message(answer: requests.Response, has_token: bool) -> str:
    """What a 403/429 from GitHub means, and when asking again is allowed."""
    headers = answer.headers
    hint = "" if has_token else "; set GITHUB_TOKEN for 5,000 requests an hour instead of 60"
    if headers.get("x-ratelimit-remaining") == "0":
        reset = headers.get("x-ratelimit-reset", "")
        when = ""
        if reset.isdigit():
            when = " until " + dt.datetime.fromtimestamp(int(reset), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return f"GitHub's API rate limit is used up{when} (HTTP {answer.status_code}){hint}"
    retry = headers.get("retry-after", "")
    if retry.isdigit():
        return f"GitHub's secondary rate limit: retry after {retry} s (HTTP {answer.status_code}){hint}"
    return f"GitHub refused the request (HTTP {answer.status_code}){'' if has_token else '; a GITHUB_TOKEN may help'}"


def _read_json(answer: requests.Response, what: str) -> Any:
    try:
        if int(answer.headers.get("Content-Length") or 0) > MAX_JSON_BYTES:
            raise SourceError(f"{what}: an answer over {MAX_JSON_BYTES // 2**20} MiB is not what was asked for")
        chunks, size = [], 0
        for chunk in answer.iter_content(64 * 1024):
            size += len(chunk)
            if size > MAX_JSON_BYTES:
                raise SourceError(f"{what}: an answer over {MAX_JSON_BYTES // 2**20} MiB is not what was asked for")
            chunks.append(chunk)
        return json.loads(b"".join(chunks))
    except ValueError:
        raise SourceError(f"{what}: {_host(answer.url)} sent something that is not JSON") from None
    except requests.RequestException as exc:
        raise SourceError(f"{what}: reading from {_host(answer.url)} failed: {type(exc).__name__}") from None
    finally:
        answer.close()


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or url
