"""Few-frame students: frame selection, student builder, convert."""
