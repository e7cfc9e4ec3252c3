"""The fewshot app: `streamlit run app.py`."""

import streamlit as st

from fewshot import runs
from fewshot.config import REPO_ROOT
from fewshot.memory import keep_freed_memory
import app_ui as ui

keep_freed_memory()  # the Draw page's adaptation: 15-25 % faster (see fewshot/memory.py)
st.set_page_config(page_title="fewshot: MAML on Omniglot", layout="wide",
                   page_icon=str(REPO_ROOT / "static" / "icon.png"))  # served by this server, not fetched online

pages = [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
         st.Page("pages/train.py", title="Train", icon=":material/monitoring:"),
         st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
         st.Page("pages/draw.py", title="Draw", icon=":material/draw:"),
         st.Page("pages/challenge.py", title="Challenge", icon=":material/sports_esports:")]
page = st.navigation(pages)
ui.queue_dispatcher(str(runs.runs_root()))  # starts queued runs as places free, from the first visit on
st.session_state.page_before, st.session_state.page_now = st.session_state.get("page_now"), page.title
page.run()
