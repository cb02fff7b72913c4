"""Scoring nodule detections: the LUNA16 FROC / CPM and the book's classification confusion.

`lunakit.evaluate` is the public face (API and the `lunakit evaluate` command);
this package holds the pieces: tables, froc, confusion, plot.
"""
