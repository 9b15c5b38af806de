"""The web map: a local server answering queries and serving products, and its static assets."""
