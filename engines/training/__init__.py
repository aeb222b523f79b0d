"""Training the engines: data sets (phantoms, or a labelled DICOM folder), the loop, evaluation."""
