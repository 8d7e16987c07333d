"""Strata's Streamlit dashboard: `streamlit run dashboard/app.py`. Reads the run store; never imports TensorFlow."""
