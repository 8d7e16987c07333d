"""Dashboard pages: each module has a `render()` that `dashboard/main.py` hands to `st.Page`."""
