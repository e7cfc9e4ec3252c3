"""What one simulated student costs the machine: the CPU seconds that the browser and the server spend on each
action of one Draw session (open, draw the five classes and a query, Adapt, then clear and classify twice), with
the load test's own actions, against `streamlit run app.py` on 127.0.0.1, on an otherwise idle machine.

    python3 scripts/browser_cost.py

The load test (scripts/load_test.py) runs 30 such sessions in one Chromium on the server's machine; this says why
its times are mostly the browser's (issue 14).
"""

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_test import (CHROMIUM, EMPTY_SLOTS, FRAMES_DRAWN, PREDICTED, QUERY, SECOND_QUERY, SHAPES,  # noqa: E402
                       VIEWPORT, Session, async_playwright, cpu_seconds, descendants, draw, launch_chromium,
                       process_table, served_app, server_pid)

SETTLE = 1.0  # seconds after an action's answer that its CPU time still counts: the page's last drawing


async def costs(url: str) -> list:
    """(action, seconds as the user sees it, browser CPU seconds, server CPU seconds) for each action."""
    server, rows = server_pid(url), []
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        context = await browser.new_context(viewport=VIEWPORT)
        await context.add_init_script(FRAMES_DRAWN)
        session = Session(0, "drawer", context, time.monotonic(), timeout_s=120)

        def browser_and_server() -> set:  # the browser: as the load test counts it, with Playwright's driver
            table = process_table()
            return descendants(os.getpid(), table) - descendants(server, table) - {os.getpid()} | {server}

        async def measured(name: str, act) -> None:
            before = cpu_seconds(browser_and_server())
            tick = time.monotonic()
            await act()
            seconds = time.monotonic() - tick
            await asyncio.sleep(SETTLE)
            after = cpu_seconds(browser_and_server())  # with the processes begun meanwhile (a new tab's)
            spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
            rows.append((name, seconds, sum(v for pid, v in spent.items() if pid != server), spent.get(server, 0.0)))

        page = None

        async def open_draw():
            nonlocal page
            await session.open(url, "Draw", "Draw your own characters")
            page = session.page
        await measured("open (Home, reload, Draw)", open_draw)
        canvases = page.locator("canvas.upper-canvas")
        for index, strokes in enumerate(SHAPES.values()):
            await measured(f"draw class {index + 1}", lambda: draw(session, "draw", canvases.nth(index), strokes,
                                                                    EMPTY_SLOTS, len(SHAPES) - index))
        await measured("draw the query", lambda: draw(session, "draw", canvases.nth(len(SHAPES)), QUERY,
                                                      EMPTY_SLOTS, 0))
        await measured("Adapt (first)", lambda: session.rerun(
            "adapt", page.get_by_role("button", name="Adapt").click, PREDICTED))
        for strokes in (SECOND_QUERY, QUERY):
            await measured("clear the query", lambda: session.rerun(
                "clear", page.get_by_role("button", name="Clear the query").click, EMPTY_SLOTS, 1))
            await measured("classify a new query", lambda: draw(session, "classify", canvases.nth(len(SHAPES)),
                                                                strokes, PREDICTED))
        await browser.close()
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as folder, served_app(Path(folder)) as url:
        rows = asyncio.run(costs(url))
    print(f"one Draw session in Debian's Chromium ({CHROMIUM}); CPU seconds until {SETTLE:g} s after each answer")
    print(f"{'action':28} {'seen s':>7} {'browser CPU s':>14} {'server CPU s':>13}")
    for name, seconds, browser, server in rows:
        print(f"{name:28} {seconds:7.2f} {browser:14.2f} {server:13.2f}")
    print(f"{'all':28} {sum(r[1] for r in rows):7.2f} {sum(r[2] for r in rows):14.2f} {sum(r[3] for r in rows):13.2f}")


if __name__ == "__main__":
    main()
