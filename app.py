"""The fewshot app: `streamlit run app.py`."""

import sys

import streamlit as st

from fewshot import runs
from fewshot.config import REPO_ROOT
from fewshot.memory import keep_freed_memory
import app_ui as ui

keep_freed_memory()  # the Draw page's adaptation: 15-25 % faster (see fewshot/memory.py)
# A session's torch work is hundreds of short calls, each releasing the interpreter lock; while other sessions' scripts
# run, taking it back waited up to Python's default 5 ms switch interval. The Draw page's adaptation, 46 ms alone,
# took 3.3 to 4.7 s beside one busy Python thread, and 0.15 s with 0.2 ms (scripts/bench_switch_interval.py).
SWITCH_INTERVAL_S = 0.0002
sys.setswitchinterval(SWITCH_INTERVAL_S)
st.set_page_config(page_title="fewshot: MAML on Omniglot", layout="wide",
                   page_icon=str(REPO_ROOT / "static" / "icon.png"))  # served by this server, not fetched online

pages = [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
         st.Page("pages/train.py", title="Train", icon=":material/monitoring:"),
         st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
         st.Page("pages/draw.py", title="Draw", icon=":material/draw:"),
         st.Page("pages/challenge.py", title="Challenge", icon=":material/sports_esports:")]
page = st.navigation(pages)
ui.settings_checked()  # a bad FEWSHOT_* setting: said on every page, which then stops
ui.queue_dispatcher(str(runs.runs_root()))  # starts queued runs as places free, from the first visit on
st.session_state.page_before, st.session_state.page_now = st.session_state.get("page_now"), page.title
page.run()
