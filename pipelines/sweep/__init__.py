"""The sweep: a grid of train params run as a Prefect flow, one task a point."""
