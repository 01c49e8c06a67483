"""The Gradio playground UI; all computation is delegated to `clipure_core`."""
