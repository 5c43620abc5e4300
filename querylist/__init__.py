"""Builds CLIP's ~500k-entry query list from offline sources (`wit-querylist`)."""
