"""The fewshot app: `streamlit run app.py`."""

from pathlib import Path

import streamlit as st

st.set_page_config(page_title="fewshot: MAML on Omniglot", page_icon=":material/draw:", layout="wide")

pages = [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
         st.Page("pages/train.py", title="Train", icon=":material/monitoring:"),
         st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:")]
if (Path(__file__).parent / "pages" / "draw.py").exists():  # the Draw page, written separately
    pages.append(st.Page("pages/draw.py", title="Draw", icon=":material/draw:"))
st.navigation(pages).run()
