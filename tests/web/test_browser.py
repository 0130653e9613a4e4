"""A real browser (Debian's Chromium, headless, driven by Playwright) against `sercon serve` with real guests.

Log in, open web1's console, see `login:`, log in to the guest and run a command, SysRq `h` from the
toolbar shows the kernel's SysRq help, Reset shows a new boot in the same page, and the boot
diagnostics page shows the serial log.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from .client import Served

pytestmark = [pytest.mark.guest, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: apt-get install -y chromium (it is in the Makefile's APT_PACKAGES)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    # The server's self-signed certificate is accepted explicitly for this context only.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def screen_has(page: Any, text: str, timeout: float = 90_000) -> None:
    page.wait_for_function("t => window.serconScreenText && window.serconScreenText().includes(t)", arg=text,
                           timeout=timeout)


def screen_count(page: Any, text: str) -> int:
    return int(page.evaluate("t => window.serconScreenText().split(t).length - 1", text))


def new_boot_after(page: Any, action: Any) -> None:
    """Do `action`; the page (no reload) then shows a new kernel boot and a new `login:` prompt."""
    mark = page.evaluate("() => window.serconTranscript().length")
    action()
    page.wait_for_function("m => { const t = window.serconTranscript(); const at = t.indexOf('Linux version', m);"
                           " return at >= 0 && t.indexOf('login:', at) >= 0; }", arg=mark, timeout=180_000)
    screen_has(page, "login:")


def login(page: Any, served: Served, user: str) -> None:
    page.goto(served.base + "/")
    assert page.url.endswith("/login")
    page.fill("#user", user)
    page.fill("#password", served.passwords[user])
    page.click("#login-button")
    page.wait_for_selector("#vms tbody tr[data-vm='web1']")


def test_browser_console_end_to_end(page: Any, served: Served) -> None:
    login(page, served, "bob")
    # The list shows bob's VMs with their state, not web2 (no role there).
    rows = page.locator("#vms tbody tr")
    names = [rows.nth(i).get_attribute("data-vm") for i in range(rows.count())]
    assert names == ["web1", "pool/0", "pool/1"]
    assert "running" in page.inner_text("#vms tbody tr[data-vm='web1']")

    page.click("#vms tbody tr[data-vm='web1'] a.console-link")
    page.wait_for_url("**/vms/web1/console")
    screen_has(page, "login:")

    # Type the guest credentials and a command, as a person would.
    page.click("#terminal")
    page.keyboard.press("Enter")
    screen_has(page, "login:")
    before = screen_count(page, "login:")
    page.keyboard.press("Enter")
    page.wait_for_function("n => window.serconScreenText().split('login:').length - 1 > n", arg=before)
    page.keyboard.type("root\n")
    screen_has(page, "Password:")
    page.keyboard.type("sercon\n")
    screen_has(page, "# ")
    page.keyboard.type("echo web-$((6*7))-ok\n")
    screen_has(page, "web-42-ok")

    # SysRq h from the toolbar: the kernel's help line.
    page.fill("#sysrq-keys", "h")
    page.click("#sysrq-send")
    screen_has(page, "sysrq: HELP")

    # Reset (with its confirmation): a new boot shows in the same page, no reload.
    new_boot_after(page, lambda: (page.click("#power-reset"), page.click("#confirm-ok")))
    assert page.url.endswith("/vms/web1/console")

    # A paste over 2048 characters is cut to 2048, with a visible notice.
    page.click("#terminal")
    page.evaluate("""() => {
        const dt = new DataTransfer();
        dt.setData('text/plain', 'echo ' + 'p'.repeat(2995));
        const target = document.querySelector('#terminal textarea');
        target.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
    }""")
    page.wait_for_selector("#notice:not(.hidden)")
    assert "2048" in page.inner_text("#notice")
    screen_has(page, "p" * 100)
    page.keyboard.press("Control+U")

    # Power cycle: a new QEMU process, the same page shows the new boot.
    new_boot_after(page, lambda: (page.click("#power-cycle"), page.click("#confirm-ok")))

    # Boot diagnostics: the serial log, with both boots.
    page.click("#diag-link")
    page.wait_for_url("**/vms/web1/diagnostics")
    page.wait_for_function("() => document.getElementById('log').textContent.includes('sysrq: HELP')")
    assert "Linux version" in page.inner_text("#log")


def test_browser_reader_gets_diagnostics_not_console(page: Any, served: Served) -> None:
    page.goto(served.base + "/login")
    page.fill("#user", "carol")
    page.fill("#password", served.passwords["carol"])
    page.click("#login-button")
    page.wait_for_selector("#vms tbody tr[data-vm='web1']")
    assert page.locator("#vms tbody tr[data-vm='web1'] a.console-link").count() == 0
    page.click("#vms tbody tr[data-vm='web1'] a.diag-link")
    page.wait_for_function("() => document.getElementById('log').textContent.includes('login:')")


def test_browser_wrong_password_shows_error(page: Any, served: Served) -> None:
    page.goto(served.base + "/login")
    page.fill("#user", "alice")
    page.fill("#password", "not-the-password")
    page.click("#login-button")
    page.wait_for_selector("#login-error:not(.hidden)")
    assert "wrong user name or password" in page.inner_text("#login-error")


@pytest.mark.parametrize("target", ["/\\example.invalid/x", "//example.invalid/x", "https://example.invalid/",
                                    "/\\/example.invalid", "javascript:alert(1)"])
def test_login_next_stays_on_this_server(page: Any, served: Served, target: str) -> None:
    """`login?next=` only leads to a path on this server.

    Before: `next=/\\example.com` passed the "starts with / but not //" check, and Chromium treats
    `/\\host` as `//host`, so a login link sent the user off-site after they typed their password."""
    import urllib.parse

    page.goto(served.base + "/login?next=" + urllib.parse.quote(target, safe=""))
    page.fill("#user", "carol")
    page.fill("#password", served.passwords["carol"])
    page.click("#login-button")
    page.wait_for_url(lambda url: not url.startswith(served.base + "/login"), timeout=30_000)
    assert page.url.startswith(served.base + "/"), page.url
    page.wait_for_selector("#vms tbody tr[data-vm='web1']")


def test_login_next_keeps_a_local_path(page: Any, served: Served) -> None:
    page.goto(served.base + "/login?next=/vms/web1/diagnostics")
    page.fill("#user", "carol")
    page.fill("#password", served.passwords["carol"])
    page.click("#login-button")
    page.wait_for_url(served.base + "/vms/web1/diagnostics", timeout=30_000)
