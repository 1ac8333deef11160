"""The web page at `/`, driven in a real headless Chromium (Debian's package).

The page is the HTTP app's own (serve_app/http/static), served by uvicorn in this process over the
fake model handle: what the page does with answers needs no Ray, and the HTTP app is the one Serve
runs. Each test compares what the page shows with what the API answers for the same bytes.
Screenshots go to a temporary folder. `make screenshots` runs these tests against the real service
(`serve run configs/cpu.yaml`, stand-in weights) and writes the README's pictures to docs/screenshots/.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from serve_app.launch.harness import REPO, free_port, serve_run, sized_config
from tests.fakes import asgi_server, client_for

pytestmark = pytest.mark.browser

SCREENSHOTS_ENV_VAR = "SCREENSHOTS_DIR"  # set by `make screenshots`: the folder to write them to
DESKTOP = {"width": 1280, "height": 900}
MOBILE = {"width": 375, "height": 812}


@pytest.fixture(scope="module")
def service():
    if os.environ.get(SCREENSHOTS_ENV_VAR):  # the README's pictures: the real service, as users see it
        with serve_run(sized_config(free_port(), backend="onnx")) as base_url:
            yield base_url
        return
    client, _, _ = client_for()
    with asgi_server(client.app) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_ENV_VAR) or tmp_path_factory.mktemp("screenshots"))
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def served_by(service) -> str:
    """How the page names the model's runtime: "<backend> on <device>", from /healthz."""
    model = httpx.get(f"{service}/healthz").json()["model"]
    return f"{model['backend']} on {model['device']}"


@pytest.fixture
def open_page(browser, service):
    """open_page(viewport=..., locale=...) -> a page showing the service's `/`; every URL it asks for is kept."""
    contexts = []

    def open_(viewport=DESKTOP, locale="en-US"):
        context = browser.new_context(viewport=viewport, locale=locale)
        contexts.append(context)
        page = context.new_page()
        page.requested = []
        page.on("request", lambda request: page.requested.append(request.url))
        page.goto(f"{service}/")
        expect(page.locator("#model-info")).to_contain_text("resnet18")
        return page

    yield open_
    for context in contexts:
        context.close()


def api_top3(service: str, path: Path) -> list[dict]:
    response = httpx.post(f"{service}/v1/classify", params={"top_k": 3}, files={"file": (path.name, path.read_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def percent(score: float) -> str:
    return f"{score * 100:.1f}%"


def wait_for_cards(page, count: int) -> list:
    """The result cards, once `count` of them have an answer (predictions or an error)."""
    expect(page.locator(".card[data-state=done], .card[data-state=error]")).to_have_count(count, timeout=60_000)
    return page.locator(".card").all()


def shown_predictions(card) -> list[tuple[str, str]]:
    return [
        (row.locator(".label").inner_text(), row.locator(".percent").inner_text())
        for row in card.locator(".prediction").all()
    ]


def drop_files(page, selector: str, paths: list[Path]) -> None:
    """A real drop event carrying the files, as a drag from the desktop delivers it."""
    files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    page.evaluate(
        """([selector, files]) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, {type: "image/jpeg"}));
            }
            const zone = document.querySelector(selector);
            zone.dispatchEvent(new DragEvent("dragenter", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [selector, files],
    )


def test_uploaded_photo_shows_the_apis_top3_as_bars(open_page, service, served_by, shared_images):
    page = open_page()
    photo = shared_images[0]
    page.set_input_files("#file-input", str(photo))
    card = wait_for_cards(page, 1)[0]

    expected = api_top3(service, photo)
    assert shown_predictions(card) == [(p["label"], percent(p["score"])) for p in expected]
    widths = [row.evaluate("r => parseFloat(r.querySelector('.fill').style.width)") for row in card.locator(".prediction").all()]
    assert widths == pytest.approx([p["score"] * 100 for p in expected], abs=0.051)
    meta = card.locator(".meta").inner_text()
    assert "resnet18" in meta and served_by in meta and meta.endswith(" ms")
    assert card.get_by_role("img", name=f"Preview of {photo.name}").is_visible()
    assert page.get_by_role("status").inner_text() == "1 classified."


def test_the_standin_banner_and_model_are_shown(open_page, served_by):
    page = open_page()
    banner = page.locator("#standin-banner")
    assert banner.is_visible() and "Stand-in weights" in banner.inner_text()
    footer = page.locator("#model-info").inner_text()
    assert "resnet18" in footer and "standin" in footer and served_by in footer


def test_browser_language_picks_chinese_and_the_toggle_switches(open_page, service, shared_images, screenshots):
    page = open_page(locale="zh-CN")
    assert page.locator("h1").inner_text() == "图像分类"
    photo = shared_images[5]
    page.set_input_files("#file-input", str(photo))
    card = wait_for_cards(page, 1)[0]
    expected = api_top3(service, photo)
    assert shown_predictions(card) == [(p["label_zh"], percent(p["score"])) for p in expected]
    page.screenshot(path=screenshots / "page-desktop-zh.png", full_page=True)

    page.get_by_role("button", name="English").click()
    assert page.get_by_role("button", name="English").get_attribute("aria-pressed") == "true"
    assert shown_predictions(card) == [(p["label"], percent(p["score"])) for p in expected]
    assert page.evaluate("document.documentElement.lang") == "en"


def test_a_rejected_file_shows_the_apis_error_message(open_page, service, tmp_path):
    not_an_image = tmp_path / "holiday.jpg"
    not_an_image.write_text("these are not the pixels you are looking for")
    api = httpx.post(f"{service}/v1/classify", files={"file": (not_an_image.name, not_an_image.read_bytes())})
    assert api.status_code == 415 and api.json()["error"]["code"] == "unsupported_media_type"

    page = open_page()
    page.set_input_files("#file-input", str(not_an_image))
    card = wait_for_cards(page, 1)[0]
    assert card.get_by_role("alert").inner_text() == api.json()["error"]["message"]
    assert page.get_by_role("status").inner_text() == "0 classified, 1 rejected."


def test_several_dropped_images_show_as_a_grid_of_results(open_page, service, shared_images, screenshots):
    page = open_page()
    photos = shared_images[10:16]
    drop_files(page, "#drop-zone", photos)
    cards = wait_for_cards(page, len(photos))
    # Newest first: the page prepends each card.
    for card, photo in zip(cards, reversed(photos)):
        assert card.locator(".file-name").inner_text() == photo.name
        expected = api_top3(service, photo)
        assert shown_predictions(card) == [(p["label"], percent(p["score"])) for p in expected]
    columns = {round(card.bounding_box()["x"]) for card in cards}
    assert len(columns) >= 3, f"a desktop grid has several columns, got x positions {columns}"
    page.screenshot(path=screenshots / "page-desktop.png", full_page=True)


def test_a_pasted_image_is_classified(open_page, service, shared_images):
    page = open_page()
    photo = shared_images[20]
    page.evaluate(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "", {type: "image/jpeg"}));
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true}));
        }""",
        base64.b64encode(photo.read_bytes()).decode(),
    )
    card = wait_for_cards(page, 1)[0]
    assert card.locator(".file-name").inner_text() == "pasted image"
    expected = api_top3(service, photo)
    assert shown_predictions(card) == [(p["label"], percent(p["score"])) for p in expected]


def test_a_card_is_busy_until_its_answer_arrives(open_page, shared_images):
    page = open_page()
    held = []
    page.route("**/v1/classify*", lambda route: held.append(route))
    page.set_input_files("#file-input", str(shared_images[30]))
    card = page.locator(".card")
    expect(card).to_have_count(1)
    assert card.get_attribute("aria-busy") == "true"
    assert card.locator(".spinner").is_visible()
    assert page.get_by_role("status").inner_text() == "Classifying 1 image…"

    page.wait_for_timeout(100)
    held[0].continue_()  # the request now goes to the real service
    wait_for_cards(page, 1)
    assert card.get_attribute("aria-busy") == "false" and card.locator(".prediction").count() == 3


def test_keyboard_alone_opens_the_picker_with_a_visible_focus(open_page, shared_images):
    page = open_page()
    focused = []
    # Listening before the key press: Playwright intercepts the picker only once it listens.
    with page.expect_file_chooser() as chooser:
        for _ in range(6):
            page.keyboard.press("Tab")
            focused.append(page.evaluate("document.activeElement.id || document.activeElement.textContent"))
            if focused[-1] == "choose":
                break
        assert focused[-1] == "choose", f"Tab order reached {focused}"
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
        page.keyboard.press("Enter")
    chooser.value.set_files(str(shared_images[40]))
    assert wait_for_cards(page, 1)[0].locator(".prediction").count() == 3

    page.get_by_role("button", name="中文").focus()
    page.keyboard.press("Space")
    assert page.locator("h1").inner_text() == "图像分类"


def test_every_control_has_an_accessible_name(open_page):
    page = open_page()
    assert page.get_by_role("button", name="Choose images").is_visible()
    assert page.get_by_role("group", name="Language / 语言").is_visible()
    assert page.get_by_role("region", name="Drop images here").is_visible()
    assert page.get_by_role("list", name="Results").count() == 1


CONTRAST_OF_TEXT = """() => {
    const rgb = s => s.match(/[\\d.]+/g).slice(0, 4).map(Number);
    const luminance = ([r, g, b]) => {
        const c = [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
    };
    const background = node => {
        for (; node; node = node.parentElement) {
            const color = rgb(getComputedStyle(node).backgroundColor);
            if (color.length < 4 || color[3] > 0) return color;
        }
        return [255, 255, 255];
    };
    const results = [];
    for (const node of document.querySelectorAll("h1, h2, h3, p, button, label, .label, .percent, footer")) {
        if (!node.offsetParent || !node.textContent.trim()) continue;
        const [a, b] = [luminance(rgb(getComputedStyle(node).color)), luminance(background(node))];
        results.push([node.tagName + "." + node.className, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]);
    }
    return results;
}"""


def test_all_text_meets_wcag_aa_contrast(open_page, tmp_path, shared_images):
    page = open_page()
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    page.set_input_files("#file-input", [str(shared_images[0]), str(junk)])
    wait_for_cards(page, 2)
    ratios = page.evaluate(CONTRAST_OF_TEXT)
    assert len(ratios) >= 10
    low = [(name, round(ratio, 2)) for name, ratio in ratios if ratio < 4.5]
    assert not low, f"text under 4.5:1 contrast: {low}"


def test_mobile_width_has_no_horizontal_scrolling(open_page, shared_images, tmp_path, screenshots):
    page = open_page(viewport=MOBILE)
    long_name = tmp_path / ("a_photo_with_a_very_long_file_name_that_does_not_break_anywhere_" + shared_images[3].name)
    long_name.write_bytes(shared_images[3].read_bytes())
    page.set_input_files("#file-input", [str(long_name), str(shared_images[7])])
    wait_for_cards(page, 2)
    assert page.evaluate("document.documentElement.scrollWidth") <= MOBILE["width"]
    for card in page.locator(".card").all():
        box = card.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= MOBILE["width"]
    page.screenshot(path=screenshots / "page-mobile.png", full_page=True)


def test_the_page_loads_nothing_from_elsewhere(open_page, service, shared_images):
    page = open_page()
    page.set_input_files("#file-input", str(shared_images[1]))
    wait_for_cards(page, 1)
    assert page.requested and all(url.startswith(f"{service}/") or url.startswith("blob:") for url in page.requested), page.requested
    headers = httpx.get(f"{service}/").headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert httpx.get(f"{service}/static/page.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
