"""The evaluate stage in three passes: the model asked once into a record (record.py), the numbers
computed from the record (numbers.py, on latent.py's measurements), the figures drawn from it (figures.py);
stage.py is the recipe."""
