"""Dashboard pages: each module has a `render()` that `dashboard/app.py` hands to `st.Page`."""
