"""Pure view functions: plain data in, plotly figures or tables out. No Streamlit here, so they test with pytest."""
