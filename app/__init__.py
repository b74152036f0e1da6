"""HKD Studio: the Streamlit app on top of ``hkd`` (UI only; the work lives in hkd/)."""
