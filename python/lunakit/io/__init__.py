"""Files in and out: CT scans and their geometry (io.ct, io.geometry), the volume cache
(io.cache), the LUNA16 tables (io.luna), findings files (io.findings) and the HTML report (io.report)."""
