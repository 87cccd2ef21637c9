"""Small reusable views (plain data in, pixels out) and helpers for the explorer panels."""
