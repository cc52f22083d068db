"""The cohort: its format, loader, validation and patient-level splits."""
