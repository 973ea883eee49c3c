"""Avro schemas (`*.avsc`, earlier versions in `history/`) and the codec that frames them."""
