"""napari dock widgets (Segment, Attention bias, Fine-tune): thin Qt over the headless modules."""
