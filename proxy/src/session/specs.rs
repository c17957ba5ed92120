// specs
