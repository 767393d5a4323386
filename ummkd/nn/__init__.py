"""ummkd package."""
