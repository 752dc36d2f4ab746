"""The report stage: every eval/<dataset>/<model> gathered into one offline HTML page."""
