"""The fewshot app: `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="fewshot: MAML on Omniglot", page_icon=":material/draw:", layout="wide")

pages = [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
         st.Page("pages/train.py", title="Train", icon=":material/monitoring:"),
         st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
         st.Page("pages/draw.py", title="Draw", icon=":material/draw:")]
st.navigation(pages).run()
