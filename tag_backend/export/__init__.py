"""Exports teams train on: a Label Studio JSON export with per-region names -> COCO, PNG masks."""
