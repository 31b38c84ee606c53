"""Where images come from: one module per transport behind the interfaces in `base`."""
