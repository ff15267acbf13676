-- A tenant's monthly budget in USD (NULL: none): the autoscaler scales no pool of the tenant past it.
ALTER TABLE tenants ADD COLUMN monthly_budget REAL;
