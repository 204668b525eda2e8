"""Big-vs-small comparison: measurements, report.md / report.json and plots."""
