"""The built docs site (`python -m scl_nb.tools.docs`, in `_docs/`) opened in a real browser: headless Chromium
driven over the DevTools protocol. It follows every internal link from the home page and checks on every
page that the link targets and anchors exist, images load, no nbdev directive is visible, every API entry
with parameters shows its parameter table, and there is a way back to the home page. Screenshots of the
home page, a library page and the main job's page go to `_docs_artifacts/` (git-ignored; a CI artefact).

Skips when Chromium or the built site is missing. `SCL_DOCS_SITE` points at another built site."""
import base64, json, os, re, shutil, subprocess, tempfile, time, urllib.request
from collections import deque
from pathlib import Path
from urllib.parse import urldefrag, urlparse, unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("SCL_DOCS_SITE", REPO / "_docs")).resolve()
ARTIFACTS = REPO / "_docs_artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)"),
              pytest.mark.skipif(not (SITE / "index.html").exists(), reason=f"no built site at {SITE} (python -m scl_nb.tools.docs)")]

PAGE_REPORT = """(async () => {
  await Promise.all(Array.from(document.images).map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })));
  return {
    title: document.title,
    text: document.body ? document.body.innerText : "",
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
    images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
    entries: Array.from(document.querySelectorAll("hr.api-entry")).map(hr => {
      const box = hr.parentElement, name = box.querySelector(".rubric, h1, h2, h3, h4"), sig = box.querySelector("pre");
      return {name: name ? name.textContent.trim() : "", sig: sig ? sig.textContent.trim() : "", table: !!box.querySelector("table")};
    }),
    code: Array.from(document.querySelectorAll("pre")).map(p => p.textContent),
    ids: Array.from(document.querySelectorAll("[id]")).map(e => e.id),
  };
})()"""


class Chromium:
    "A headless Chromium and one page, spoken to over the DevTools protocol (websocket-client)."
    def __init__(self):
        import websocket
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
                                      "--window-size=1280,2000", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port, t0 = None, time.time()
        while port is None and time.time() - t0 < 60:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None: raise RuntimeError("chromium exited before it listened")
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m: port = int(m.group(1))
        if port is None: raise RuntimeError("chromium did not open its DevTools port within 60 s")
        pages = [t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list")) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id, self.events = 0, []
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=2000, deviceScaleFactor=1, mobile=False)

    def send(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps(dict(id=self.next_id, method=method, params=params)))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def open(self, url, timeout=30) -> dict:
        "Load `url`, wait for its load event and its images; return the page report."
        self.events.clear()
        self.send("Page.navigate", url=url)
        t0 = time.time()
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.time() - t0 > timeout: raise TimeoutError(f"{url} did not load within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))
        res = self.send("Runtime.evaluate", expression=PAGE_REPORT, awaitPromise=True, returnByValue=True)
        return res["result"]["value"]

    def screenshot(self, path):
        height = min(int(self.send("Page.getLayoutMetrics")["cssContentSize"]["height"]), 6000)
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=max(height, 800), deviceScaleFactor=1, mobile=False)
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=2000, deviceScaleFactor=1, mobile=False)

    def close(self):
        try: self.ws.close()
        finally:
            self.proc.terminate()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


def _local(url):
    "The file a `file://` URL of the site points at, else None (external links are not followed)."
    u = urlparse(url)
    if u.scheme != "file": return None
    p = Path(unquote(u.path))
    return p if SITE in p.parents or p == SITE else None


@pytest.fixture(scope="module")
def site():
    "Every page reachable from the home page: {path: report}."
    browser, pages = Chromium(), {}
    try:
        todo, seen = deque([SITE / "index.html"]), {SITE / "index.html"}
        while todo:
            p = todo.popleft()
            if not p.exists(): pages[p] = None; continue
            pages[p] = browser.open(p.as_uri())
            for link in pages[p]["links"]:
                q = _local(urldefrag(link)[0])
                if q is not None and q.suffix == ".html" and q not in seen: seen.add(q); todo.append(q)
        browser.open((SITE / "search.html").as_uri() + "?q=all_gather_with_grad")
        for _ in range(40):  # Sphinx's client-side search fills the results after the index script loaded
            hits = browser.send("Runtime.evaluate", expression="Array.from(document.querySelectorAll('#search-results li a')).map(a => a.href)",
                                returnByValue=True)["result"]["value"]
            if hits: break
            time.sleep(0.25)
        pages["search"] = hits
        ARTIFACTS.mkdir(exist_ok=True)
        for name in ("index", "objectives", "pretrain"):
            if (SITE / f"{name}.html").exists():
                browser.open((SITE / f"{name}.html").as_uri()); browser.screenshot(ARTIFACTS / f"{name}.png")
    finally: browser.close()
    return pages


@pytest.fixture(scope="module")
def crawl(site): return {p: r for p, r in site.items() if p != "search"}


def test_search_works_offline(site):
    hits = site["search"]
    assert any(h.split("#")[0].endswith("/distributed.html") for h in hits), hits


def test_every_internal_link_resolves(crawl):
    broken = []
    for page, rep in crawl.items():
        if rep is None: continue
        for link in rep["links"]:
            target, frag = urldefrag(link)
            q = _local(target)
            if q is None: continue
            if not q.exists(): broken.append(f"{page.name} -> {link} (no such file)")
            elif frag and q.suffix == ".html" and crawl.get(q) and unquote(frag) not in crawl[q]["ids"]:
                broken.append(f"{page.name} -> {link} (no such anchor)")
    assert not [p for p, r in crawl.items() if r is None], "linked pages missing"
    assert not broken, "\n".join(broken[:30])
    assert len(crawl) >= 10, f"only {len(crawl)} pages reachable from the home page"


def test_images_load(crawl):
    bad = [f"{p.name}: {i['src']}" for p, r in crawl.items() for i in r["images"] if not i["ok"]]
    assert not bad, "\n".join(bad)


def test_no_directive_or_prompt_visible(crawl):
    directive = re.compile(r"^\s*#\|\s*[\w-]+", re.M)
    bad = [f"{p.name}: {m.group(0).strip()!r}" for p, r in crawl.items()
           for text in [r["text"], *r["code"]] for m in [directive.search(text)] if m]
    bad += [f"{p.name}: an 'In [ ]:' prompt" for p, r in crawl.items() if re.search(r"In \[\s*\d*\s*\]:", r["text"])]
    assert not bad, "\n".join(bad[:30])


def test_api_entries_show_parameter_tables(crawl):
    entries = [(p.name, e) for p, r in crawl.items() for e in r["entries"]]
    assert len(entries) >= 50, f"only {len(entries)} API entries in the whole site"
    has_params = lambda sig: bool(re.search(r"\(\s*[^\s)]", sig))
    missing = [f"{page}: {e['name']} {e['sig'][:80]!r}" for page, e in entries if has_params(e["sig"]) and not e["table"]]
    assert not missing, "API entries without their parameter table:\n" + "\n".join(missing[:30])
    assert all(e["name"] and e["sig"] for _, e in entries)


def test_way_back_to_the_home_page(crawl):
    home = (SITE / "index.html").as_uri()
    lost = [p.name for p, r in crawl.items() if p.name != "index.html" and home not in r["links"]]
    assert not lost, f"pages without a link to the home page: {lost}"


def test_home_page(crawl):
    home = crawl[SITE / "index.html"]
    for text in ("The method in short", "Set up", "Current figures", "Model and objectives", "Data",
                 "Jobs (papermill notebooks)", "Experiments and figures", "bash .ci/test"):
        assert text in home["text"], f"the home page lacks {text!r}"
    targets = {Path(urlparse(l).path).name for l in home["links"] if l.startswith("file:")}
    assert {"method.html", "objectives.html", "pretrain.html", "figures.html"} <= targets
    assert any(i["ok"] and "pretrain_loss" in i["src"] for i in home["images"]), "the current figures' plot is missing"


def test_library_page_has_outputs_and_entries(crawl):
    page = crawl[SITE / "objectives.html"]
    names = {e["name"] for e in page["entries"]}
    assert {"nce", "PretrainTask"} <= names, names
    assert "computed while building these docs" in page["text"]


def test_main_job_page(crawl):
    page = crawl[SITE / "pretrain.html"]
    run = REPO / "runs" / "pretrain.ipynb"  # README's first set-up command writes it; CI builds the docs with --runs runs
    finished = run.exists() and (json.loads(run.read_text()).get("metadata", {}).get("papermill") or {}).get("end_time")
    if finished and os.environ.get("SCL_DOCS_SITE") is None:
        assert "Executed run" in page["text"] and "at commit" in page["text"], page["text"][:1500]
        assert sum(i["ok"] for i in page["images"]) >= 1, "the executed main job shows no plot"
    else:
        assert "Not run for this build" in page["text"] or "Executed run" in page["text"]
