"""One router per resource: predictions, explanations, audit trail and cases, model, site calibration."""
